"""Keys, encryption, execution and decryption of compiled models.

The client side (:class:`FHEClient`, the only holder of secret keys) and the evaluation side
(:class:`FHEServer`) are separate objects that exchange bytes.
"""

from .client import FHEClient, write_private_file
from .model import FHE_MODES, FHEModel, NotCompiledError
from .server import FHEServer

__all__ = ["FHEClient", "FHEModel", "FHEServer", "FHE_MODES", "NotCompiledError", "write_private_file"]

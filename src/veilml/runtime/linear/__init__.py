"""Encrypted ``x @ M`` with a clear integer matrix: backends ``simulate``, ``concrete``, ``glwe``."""

from .base import BACKENDS, ClientSession, LinearBackend, LinearServer, MatrixSpec, get_backend, pack_frames, unpack_frames

__all__ = [
    "BACKENDS",
    "ClientSession",
    "LinearBackend",
    "LinearServer",
    "MatrixSpec",
    "get_backend",
    "pack_frames",
    "unpack_frames",
]

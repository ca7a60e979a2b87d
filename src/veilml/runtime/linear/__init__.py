"""Encrypted ``x @ M`` with a clear integer matrix: backends ``concrete``, ``glwe``, and ``clear`` (plaintext)."""

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

"""The batched path: whole tables scored with leveled BFV, one row per slot.

- :mod:`.program`: slot programs (linear forms over encrypted slot vectors and their relinearized products),
  with a clear evaluation that is their oracle;
- :mod:`.seal_bfv`: their evaluation through SEAL (parameters from the depth, the client's fresh keys, the
  server's mask, re-randomization and flooding);
- :mod:`.encoding`: the bits the client encrypts; :mod:`.plan`: a model's public description (checked by the
  client) and the cost model; :mod:`.halves`: the server's half and the client's, and the bytes between them.

Tree ensembles become slot programs in :mod:`veilml.models.trees.batch`.
"""

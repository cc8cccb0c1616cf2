"""The pure rules: the one digest definition, the seal, Merkle proofs, keys, ownership."""

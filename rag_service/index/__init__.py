"""The FAISS index derived from the store: atomic files, readers-writer lock, the FAISS wrapper, snapshots,
the live index.
"""

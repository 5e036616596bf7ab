"""Search over a user's photos: an incremental index (SQLite + vectors), a FAISS shortlist, an exact re-rank."""

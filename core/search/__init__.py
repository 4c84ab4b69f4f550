"""Visual search: embeddings, vector indexes over FAISS, and the service the pages and CLI call."""

"""Cross-encoder reranking: TEI's ``POST /rerank``, Jina/Cohere's ``/v1/rerank`` and ``/v2/rerank``."""

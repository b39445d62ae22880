"""distilserve's HTTP server: FastAPI routes over the model side's runtime, with dynamic batching."""

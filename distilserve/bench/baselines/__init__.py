"""What distilserve is measured against: the in-process ceiling, a plain PyTorch server, infinity-emb."""

"""A support assistant over the project's documentation, with distilserve as its model tier."""

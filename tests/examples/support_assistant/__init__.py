"""The support assistant: its parts offline, and the whole against the live default server (slow)."""

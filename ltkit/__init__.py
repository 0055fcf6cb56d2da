"""ltkit."""

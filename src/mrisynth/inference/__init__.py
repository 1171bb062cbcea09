"""Using a trained generator: rendering, the registered model, the HTTP server, generate, promote."""

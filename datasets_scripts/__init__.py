"""Dataset builders and synthetic data generators (`python -m datasets_scripts.<tool>`)."""

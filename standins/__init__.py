"""Local HTTPS stand-ins for the Azure services kvlink talks to."""

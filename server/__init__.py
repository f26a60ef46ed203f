"""Everything facing a person or a network: websocket server and client, pygame viewer, export, CLI."""

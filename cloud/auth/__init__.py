"""Identity: password hashes, session tokens (JWT), refresh tokens, device tokens, external OIDC."""

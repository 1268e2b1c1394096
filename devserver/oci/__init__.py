"""OCI plumbing: references, the local content store, the registry client, pull and push."""

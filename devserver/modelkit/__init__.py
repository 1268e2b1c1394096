"""The ModelKit format: Kitfile, media types, pack, safe unpack, layer matching, materialize."""

"""Tables and figures derived from ``results.json`` files alone."""

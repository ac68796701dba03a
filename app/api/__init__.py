"""HTTP surface: routes per resource, typed dependencies, errors, auth and limits."""

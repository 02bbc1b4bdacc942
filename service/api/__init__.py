"""The HTTP layer: routes, dependencies, problem responses, capacity and request context."""

"""The HTTP layer: routes, dependencies, problem responses, capacity and request context."""

API_PREFIX = "/v1"  # every versioned route: set once, as the prefix of the router that holds them

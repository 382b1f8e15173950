"""The XML-RPC surface: server (HTTP, dispatch, Faults), the API calls, the exec call."""

"""The front end: HTTP processes that read, validate and tokenise requests, and the client side of the channel."""

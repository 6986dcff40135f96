"""Pure REST protocol logic of the query frontend: request parsing, response bodies."""

"""Provider adapter tests: translation, parsing, fake upstreams over HTTP, the Anthropic ingress."""

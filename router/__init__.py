"""pennyroute: route batch LLM work to the cheapest model that meets its bar, and ledger every cent."""

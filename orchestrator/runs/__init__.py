"""Use cases on runs: create one, its handle (``FlowRun``), its life in the fleet (launch, retry, end, cancel)."""

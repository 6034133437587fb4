"""Values on their way between task runs: serializers, results by reference, inputs inline or kept in the run store."""

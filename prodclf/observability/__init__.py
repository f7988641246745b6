"""What a scheduler or platform watches a run by: OpenLineage events, Pushgateway metrics, and
log lines that carry the command and its run id. Each is off unless configured, and none can
fail a job."""

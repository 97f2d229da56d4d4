"""One module per command: orchestration and reports. Each is a public Python function the CLI
calls; what the CLI prints is the report's ``to_dict()`` or its summary."""

"""What runs a Bitware Mesh: the `bitware` command line (`cli/`), the supervisor behind `bitware
up`, the in-process mesh of the tests and benches, and the local model's process. It sits above
the servers and imports them; no server and nothing in `bitware_core` imports it."""

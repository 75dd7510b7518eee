"""The small shared package every Bitware Mesh server builds on: config, errors, auth, database,
logging, channels and the server bootstrap. It imports no server and nothing of `bitware_mesh`
(which runs the mesh: the CLI, the supervisor, the in-process mesh)."""

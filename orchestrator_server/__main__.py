from orchestrator_server.server import main

main()

from granulator_server.server import main

main()

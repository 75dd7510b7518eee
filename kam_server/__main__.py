from kam_server.server import main

main()

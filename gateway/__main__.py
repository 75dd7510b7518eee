"""`python -m gateway`: serve the gateway on BITWARE_HOST:BITWARE_PORT."""

from gateway.app import main

main()

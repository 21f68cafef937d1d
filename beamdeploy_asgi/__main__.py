from beamdeploy_asgi.cli import main

main()

from beamdeploy_asgi.worker.main import main

main()

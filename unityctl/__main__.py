from unityctl.cli import main

main()

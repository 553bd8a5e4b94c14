from grantkeeper.cli.main import main

main()

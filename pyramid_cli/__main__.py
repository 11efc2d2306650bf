from pyramid_cli.cli import main

main()

from pyramid_cli.cli import main

# Guarded: the corpus builder's fork server re-imports the main module in its workers.
if __name__ == "__main__":
    main()

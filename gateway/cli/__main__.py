from gateway.cli import main

if __name__ == "__main__":  # the guard matters: ingest's worker process re-imports the main module
    main()

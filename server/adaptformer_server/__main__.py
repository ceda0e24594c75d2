"""``python -m adaptformer_server [serve] --port 8000 ...``"""

from adaptformer_server.cli import main

if __name__ == "__main__":
    main()

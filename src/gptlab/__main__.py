"""`python -m gptlab` runs the command line."""

from gptlab.cli import main

if __name__ == "__main__":
    main()

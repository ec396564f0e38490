from deltaimg.cli import main

main()

from cmkdtool.cli.app import main

main()

from pipeline.demo.app import main

main()

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("index", "search", "serve"):  # query-by-example search
        from search.cli import main as search_main

        raise SystemExit(search_main())
    from experiments.cli import main

    main()

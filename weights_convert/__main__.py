from weights_convert.convert import main

raise SystemExit(main())

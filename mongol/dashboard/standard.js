/* mongol-report dashboard: the standard reports view */
